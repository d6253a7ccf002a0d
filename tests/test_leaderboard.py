"""The leaderboard site (``lwta-zoo leaderboard``): its figures are the committed reports', a model without a
report is 'not evaluated', and the pages work in a real browser (headless Chromium, Debian's package) from the
file system alone: a row per published model, sorting, no request off the file system, screenshots at a laptop
and a phone width (written to $LWTA_ZOO_SCREENSHOTS or the test's tmp folder, for a person to look at)."""
import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from lwta_zoo import hub, leaderboard
from lwta_zoo.cli import main

WIDTHS = {'laptop': (1366, 900), 'phone': (390, 844)}


def _reports(name):
    """(report folder, report.json) of a shipped model, read here without lwta_zoo."""
    folder = hub.SHIPPED_WEIGHTS / name
    return [(p.parent.relative_to(folder).as_posix(), json.loads(p.read_text()))
            for p in sorted(folder.glob('eval/*/report.json'))]


def _expected(report):
    """Per threat model of a report: clean, worst case and each attack's accuracy, as the report gives them."""
    if report.get('format', 1) >= 2:
        return [(report['clean']['accuracy'], t['accuracy'],
                 {a: report['attacks'][a]['accuracy'] for a in t['attacks']}) for t in report['threat_models']]
    return [(report['clean_accuracy'], report['worst_case_accuracy'],
             {a: v['robust_accuracy'] for a, v in report['attacks'].items()})]


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    output = tmp_path_factory.mktemp('site')
    assert main(['leaderboard', '--output', str(output)]) == 0
    return output


def test_rows_hold_the_figures_of_every_shipped_report():
    rows = leaderboard.rows()
    assert {r.model for r in rows} == set(hub.shipped_weights())
    for name in hub.shipped_weights():
        for run, report in _reports(name):
            found = [r for r in rows if r.model == name and r.report == run]
            expected = _expected(report)
            assert len(found) == len(expected)
            for row, (clean, worst, attacks) in zip(sorted(found, key=lambda r: r.worst.value),
                                                    sorted(expected, key=lambda e: e[1])):
                assert (row.clean.value, row.worst.value) == (clean, worst)
                assert {f.name: f.value for f in row.attacks if not f.part_of} == attacks
                assert (row.n, row.repeats, row.command) == (report['n'], report['repeats'], report['command'])
                papers = [v for a, v in attacks.items() if report['attacks'][a]['protocol'] != 'adaptive']
                if not papers:  # a report of adaptive attacks only (cw_mean_n100) has no papers' protocol
                    assert row.papers is None
                    continue
                assert row.papers.value == min(papers)
                # the previous rule (format 1) ANDs the attacks, so its worst case is at most each; the estimator
                # scores the worst candidate with fresh draws, so noise may lift it a little above the weakest
                # attack's own figure, never by more than its interval
                assert row.worst.value <= row.papers.value or (
                    report.get('format', 1) >= 2 and row.worst.interval[0] <= row.papers.value)


def test_model_cards_md_lists_the_same_rows():
    """MODEL_CARDS.md (tools/make_model_cards.py) renders the leaderboard's rows: as committed, it holds each
    row's figures, each with its 95% interval where the report has one (after new reports ship, rerun the tool)."""
    def interval(fig):
        return f' [{100 * fig.interval[0]:.1f}, {100 * fig.interval[1]:.1f}]' if fig.interval else ''

    lines = (Path(__file__).resolve().parents[1] / 'MODEL_CARDS.md').read_text().splitlines()
    for row in leaderboard.rows():
        mine = [line for line in lines if line.startswith(f'| {row.model}')]
        if row.report is None:
            assert any('| not evaluated |' in line for line in mine)
            continue
        (line,) = [line for line in mine if f'`{row.command}`' in line and f'({row.threat_model}) |' in line]
        assert f'| {100 * row.clean.value:.1f}{interval(row.clean)} |' in line
        assert (row.worst.interval is None) == ('previous rule (no intervals) |' in line)
        assert f'**{100 * row.worst.value:.1f}**{interval(row.worst)} ({row.threat_model})' in line
        assert all(f'{f.name} ({f.protocol}, {f.threat_model}) {100 * f.value:.1f}{interval(f)}' in line
                   for f in row.attacks)
        # an L2 attack's figure means little without the distance it needed
        assert all(f'{f.name} ({f.protocol}, L2) {100 * f.value:.1f}{interval(f)} at median L2 {f.median_l2:.3g}'
                   in line for f in row.attacks if f.threat_model == 'L2' and f.median_l2 is not None)


def test_a_model_without_a_report_is_not_evaluated(monkeypatch, tmp_path):
    weights = tmp_path / 'weights'
    shutil.copytree(hub.SHIPPED_WEIGHTS, weights, copy_function=os.symlink)
    name = next(n for n in hub.shipped_weights() if _reports(n))
    shutil.rmtree(weights / name / 'eval')
    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', weights)
    (row,) = leaderboard.model_rows(name)
    assert row.report is None and row.clean is None and row.worst is None and not row.attacks
    leaderboard.write_site(tmp_path / 'site')
    marker = f'<tr class="not-evaluated" data-model="{name}">'
    pages = [p.read_text() for p in (tmp_path / 'site').glob('*.html') if marker in p.read_text()]
    assert pages  # on the boards of its dataset, with no figure and no report
    for text in pages:
        tr = text.split(marker)[1].split('</tr>')[0]
        assert 'not evaluated' in tr and 'data-value="0.' not in tr and 'report.md' not in tr


def test_a_report_with_two_threat_models_gives_a_row_on_each_board(monkeypatch, tmp_path):
    """A report of format 2 keeps threat models apart (here an L-inf attack with parts and an L2 attack, made from a
    shipped report): a row each, each on its own board, an attack's parts in its row but not a column."""
    weights = tmp_path / 'weights'
    shutil.copytree(hub.SHIPPED_WEIGHTS, weights, copy_function=os.symlink)
    name, (run, report) = next((n, r) for n in hub.shipped_weights() for r in _reports(n)
                                if r[1].get('format') == 2 and r[1]['threat_models'][0]['threat_model'] == 'Linf')
    figure = lambda accuracy: {'accuracy': accuracy, 'interval': [accuracy / 2, (1 + accuracy) / 2],  # noqa: E731
                               'p_correct': accuracy, 'n': report['n']}
    linf = report['threat_models'][0]
    attack = dict(report['attacks'][linf['attacks'][0]], parts={'apgd-ce': figure(0.5), 'apgd-t': figure(0.4)})
    l2 = {'protocol': 'AISTATS paper', 'threat_model': 'L2', 'eps': None, 'settings': {'attack': 'cw_l2'},
          'median_l2': 1.5, 'found': 3, **figure(0.3)}
    report = {**report, 'attacks': {**report['attacks'], linf['attacks'][0]: attack, 'aistats_cw': l2},
              'threat_models': [linf, {'threat_model': 'L2', 'eps': None, 'attacks': ['aistats_cw'], **figure(0.25)}]}
    (weights / name / 'eval' / 'two_threats').mkdir()
    (weights / name / 'eval' / 'two_threats' / 'report.json').write_text(json.dumps(report))
    (weights / name / 'eval' / 'two_threats' / 'robust_vs_eps.png').write_bytes(b'a plot')  # as plots.py names it
    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', weights)
    found = {r.threat_model: r for r in leaderboard.model_rows(name) if r.report == 'eval/two_threats'}
    assert set(found) == {'Linf', 'L2'}
    assert (found['L2'].eps, found['L2'].worst.value, [f.name for f in found['L2'].attacks]) == (None, 0.25,
                                                                                                   ['aistats_cw'])
    assert found['L2'].papers.value == 0.3 and found['Linf'].worst.value == linf['accuracy']
    parts = [f for f in found['Linf'].attacks if f.part_of == linf['attacks'][0]]
    assert [(f.name, f.value) for f in parts] == [(f'{linf["attacks"][0]} apgd-ce', 0.5),
                                                  (f'{linf["attacks"][0]} apgd-t', 0.4)]
    leaderboard.write_site(tmp_path / 'site')
    boards = {p.name: p.read_text() for p in (tmp_path / 'site').glob('*.html')}
    l2_board = next(text for file, text in boards.items() if '-l2' in file and name in text)
    assert 'data-report="eval/two_threats"' in l2_board and 'aistats_cw<small>AISTATS paper</small>' in l2_board
    assert not any('apgd-ce' in text.split('</thead>')[0] for text in boards.values())
    page = tmp_path / 'site' / leaderboard._model_file(name)  # its plots beside its page
    assert '<img src="eval/two_threats/robust_vs_eps.png"' in page.read_text()
    assert (page.parent / 'eval' / 'two_threats' / 'robust_vs_eps.png').read_bytes() == b'a plot'


def test_a_report_of_the_previous_rule_gives_one_row_without_intervals(monkeypatch, tmp_path):
    """A report of format 1 (tests/data: the ReLU model's papers report before its re-run) took one worst case over
    its L-inf and L2 attacks: one row on a joined board, at its attacks' L-inf budget, with no interval, and said so."""
    weights = tmp_path / 'weights'
    shutil.copytree(hub.SHIPPED_WEIGHTS, weights, copy_function=os.symlink)
    old = json.loads((Path(__file__).parent / 'data' / 'report_format1.json').read_text())
    name = 'aistats_softmax_mnist.relu_fmnist_pgd'
    (weights / name / 'eval' / 'old').mkdir()
    (weights / name / 'eval' / 'old' / 'report.json').write_text(json.dumps(old))
    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', weights)
    (row,) = [r for r in leaderboard.model_rows(name) if r.report == 'eval/old']
    assert (row.threat_model, row.eps, row.clean.value, row.worst.value) == ('L2+Linf', 0.1, old['clean_accuracy'],
                                                                            old['worst_case_accuracy'])
    assert row.worst.interval is None and row.clean.interval is None
    assert {f.name: f.value for f in row.attacks} == {a: v['robust_accuracy'] for a, v in old['attacks'].items()}
    leaderboard.write_site(tmp_path / 'site')
    board = next(p.read_text() for p in (tmp_path / 'site').glob('*.html') if 'data-report="eval/old"' in p.read_text()
                 and '<tr' in p.read_text() and 'l2-linf' in p.name)
    assert 'These reports (format 1) take one worst case over attacks of several threat models' in board
    assert 'no interval in this report (format 1)' in board


def test_the_command_fails_on_one_line(tmp_path, capsys):
    (tmp_path / 'taken').write_text('a file, not a folder')
    assert main(['leaderboard', '--output', str(tmp_path / 'taken')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('lwta-zoo leaderboard: error: ') and err.count('\n') == 1


def _requests(driver):
    """URLs the pages requested since the last call, from Chromium's network log."""
    messages = (json.loads(e['message'])['message'] for e in driver.get_log('performance'))
    return [m['params']['request']['url'] for m in messages if m['method'] == 'Network.requestWillBeSent']


def _open(driver, page: Path, width: int, height: int):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                           {'width': width, 'height': height, 'deviceScaleFactor': 1, 'mobile': width < 600})
    driver.get(page.as_uri())
    # every image loads (waited for: a loaded machine may decode them after the load event); a broken one times out
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        'return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)'), f'an image of {page}')
    # the page fits the width (a wide table scrolls inside its own box)
    assert driver.execute_script('return document.documentElement.scrollWidth') <= width, (page, width)


def _table(driver):
    heads = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.board thead th')).map(th => th.innerText.split('\\n')[0])")
    rows = driver.execute_script("""return Array.from(document.querySelectorAll('table.board tbody tr')).map(tr => ({
        model: tr.dataset.model, report: tr.dataset.report || null,
        cells: Array.from(tr.cells).map(td => td.dataset.value === undefined ? null : td.dataset.value)}))""")
    return [h.strip() for h in heads], rows


def _screenshot(driver, path: Path):
    shot = driver.execute_cdp_cmd('Page.captureScreenshot', {'format': 'png', 'captureBeyondViewport': True})
    path.write_bytes(base64.b64decode(shot['data']))


def test_the_site_in_chromium(site, browser, tmp_path):
    shots = Path(os.environ.get('LWTA_ZOO_SCREENSHOTS') or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    _requests(browser)  # drop anything logged before
    boards = sorted(p for p in site.glob('*.html') if p.name != 'index.html')
    seen = {}
    for page in [site / 'index.html'] + boards:
        _open(browser, page, *WIDTHS['laptop'])
        heads, rows = _table(browser) if page in boards else ([], [])
        for row in rows:
            cells = dict(zip(heads, row['cells']))
            seen.setdefault(row['model'], []).append((row['report'], cells))
        for kind, size in WIDTHS.items():
            _open(browser, page, *size)
            _screenshot(browser, shots / f'{page.stem}-{kind}.png')
    # a row per published model; per report and threat model, the report's own figures
    assert set(seen) == set(hub.shipped_weights())
    for name in hub.shipped_weights():
        for run, report in _reports(name):
            shown = [cells for r, cells in seen[name] if r == run]
            expected = _expected(report)
            assert sorted(float(c['worst case']) for c in shown) == sorted(e[1] for e in expected)
            for cells in shown:
                clean, worst, attacks = next(e for e in expected if e[1] == float(cells['worst case']))
                assert float(cells['clean']) == clean
                assert {a: float(cells[a]) for a in attacks} == attacks  # a column an attack
                papers = [v for a, v in attacks.items() if report['attacks'][a]['protocol'] != 'adaptive']
                shown_papers = cells["papers' protocol"]
                assert (float(shown_papers) == min(papers)) if papers else shown_papers is None
                assert (int(cells['n']), int(cells['R'])) == (report['n'], report['repeats'])
    # sorting by worst case: ascending, then descending; a board with several rows
    board = max(boards, key=lambda p: p.read_text().count('<tr data-model='))
    _open(browser, board, *WIDTHS['laptop'])
    heads, before = _table(browser)
    column = heads.index('worst case')
    worst = lambda rows: [float(r['cells'][column]) for r in rows]  # noqa: E731
    for order in ('ascending', 'descending'):
        browser.execute_script(f"document.querySelectorAll('table.board thead th')[{column}].querySelector('button')"
                               '.click()')
        after = worst(_table(browser)[1])
        assert after == sorted(worst(before), reverse=order == 'descending') and len(set(after)) > 1
    # the model pages: the card, the snippets, every image there
    for name in hub.shipped_weights():
        for kind, size in WIDTHS.items():
            _open(browser, site / leaderboard._model_file(name), *size)
            _screenshot(browser, shots / f'{name}-{kind}.png')
        text = browser.find_element('tag name', 'main').text
        assert f'Model card for {name}' in text and f"'{name}'" in text
    requests = _requests(browser)
    assert any(url.endswith('/style.css') for url in requests) and any(url.endswith('.svg') for url in requests)
    assert all(url.startswith('file://') for url in requests), [u for u in requests if not u.startswith('file://')]
