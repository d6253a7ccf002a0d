/* Sort a board by a column: a click sorts descending first for figures, then flips. A cell without data-value
   (no figure) always goes last. The worst-case column (data-tiered) sorts by the row's status first, whatever the
   direction: rows with an adaptive worst case, then incomplete suites, then rows the papers' attacks alone
   evaluated, then models without a report; a papers' figure is never ranked as a worst case. */
document.querySelectorAll('table.board th[data-sort] button').forEach(function (button) {
  button.addEventListener('click', function () {
    var th = button.closest('th'), table = th.closest('table'), col = th.cellIndex;
    var ascending = th.getAttribute('aria-sort') === 'descending' || (th.dataset.sort === 'text' && !th.hasAttribute('aria-sort'));
    table.querySelectorAll('th[aria-sort]').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var tiered = th.hasAttribute('data-tiered');
    var key = function (tr) { var v = tr.cells[col].dataset.value; return v === undefined ? '' : v; };
    var rows = Array.prototype.slice.call(table.tBodies[0].rows).sort(function (a, b) {
      if (tiered && a.dataset.tier !== b.dataset.tier) return Number(a.dataset.tier) - Number(b.dataset.tier);
      var x = key(a), y = key(b);
      if (x === '' || y === '') return (x === '') - (y === '');
      var d = th.dataset.sort === 'number' ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return ascending ? d : -d;
    });
    rows.forEach(function (tr) { table.tBodies[0].appendChild(tr); });
  });
});
