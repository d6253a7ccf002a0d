"""The leaderboard (``lwta-zoo leaderboard``): a row per model, board and prediction setting, every figure read from
a committed report, a worst case only from a report that ran the adaptive preset's attacks (a row the papers'
attacks alone evaluated says so and ranks below every evaluated row), a model without a report 'not evaluated';
the output folder is guarded; and the pages work in a real browser (headless Chromium, Debian's package) from the
file system alone: sorting, no request off the file system, screenshots at a laptop and a phone width (written to
$LWTA_ZOO_SCREENSHOTS or the test's tmp folder, for a person to look at)."""
import base64
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lwta_zoo import hub, leaderboard
from lwta_zoo.cli import main

WIDTHS = {'laptop': (1366, 900), 'phone': (390, 844)}
ROOT = Path(__file__).resolve().parents[1]


def _reports(name):
    """(report folder, report.json) of a shipped model, read here without lwta_zoo."""
    folder = hub.SHIPPED_WEIGHTS / name
    return [(p.parent.relative_to(folder).as_posix(), json.loads(p.read_text()))
            for p in sorted(folder.glob('eval/*/report.json'))]


def _at(report, key):
    """The figure at ``key`` (a path of keys and indices) in a report.json."""
    for k in key:
        report = report[k]
    return report


def _adaptive(report, threat):
    """Whether a report's threat model ran every attack of the adaptive preset (``lwta-zoo eval --preset adaptive``)
    for its dataset's budgets."""
    from lwta_zoo.attacks.suite import select, suite

    needed = {a.name for a in select(suite(report['dataset_budgets']), preset='adaptive')
              if a.threat_model == threat['threat_model']}
    return bool(needed) and needed <= set(threat['attacks'])


def _setting(report, threat):
    return (threat['threat_model'], threat['eps'], report.get('samples', 1), report.get('eval_tau'))


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    output = tmp_path_factory.mktemp('site')
    assert main(['leaderboard', '--output', str(output)]) == 0
    return output


@pytest.fixture
def one_model(monkeypatch, tmp_path):
    """A weights folder holding one shipped model (linked, not copied), so that a site is quick to write."""
    weights = tmp_path / 'weights'
    name = 'aistats_softmax_mnist.lwta_u2_fmnist_pgd'
    shutil.copytree(hub.SHIPPED_WEIGHTS / name, weights / name, copy_function=os.symlink)
    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', weights)
    return weights / name


def test_rows_hold_the_figures_of_every_shipped_report():
    """Each report's threat models land in one row per prediction setting; every figure is its report's; the worst
    case only where that report ran the adaptive preset; a model appears once per board and setting."""
    rows = leaderboard.rows()
    assert {r.name for r in rows} == set(hub.shipped_weights())
    settings = Counter((r.name, r.board, r.samples, r.sampling) for r in rows)
    assert max(settings.values()) == 1
    for row in rows:
        if not row.reports:
            continue
        reports = {e.report: json.loads((hub.SHIPPED_WEIGHTS / row.name / e.report / 'report.json').read_text())
                   for e in row.reports}
        shown = [row.clean, row.papers, row.autoattack, *row.attacks] + ([row.worst] if row.worst else [])
        for f in filter(None, shown):
            figure = _at(reports[f.report], f.key)
            assert (f.value, list(f.interval), f.n) == (figure['accuracy'], figure['interval'], figure['n'])
        adaptive = [(run, i) for run, r in reports.items() for i, t in enumerate(r['threat_models'])
                    if _setting(r, t)[:2] == (row.threat_model, row.eps) and _adaptive(r, t)]
        assert (row.worst is None) == (not adaptive)
        assert row.status == ('adaptive suite' if adaptive else row.status)
        if row.worst is not None:
            assert (row.worst.report, row.worst.key) in [(run, ('threat_models', i)) for run, i in adaptive]
            assert row.clean.report == row.worst.report  # the worst case's own clean figure beside it
        # every attack of the row's reports is a figure of the row, none twice
        names = {a for r in reports.values() for t in r['threat_models']
                 if (t['threat_model'], t['eps']) == (row.threat_model, row.eps) for a in t['attacks']}
        assert sorted(f.name for f in row.attacks if not f.part_of) == sorted(names)
    # every report's every threat model is in a row
    for name in hub.shipped_weights():
        for run, report in _reports(name):
            for t in report['threat_models']:
                (row,) = [r for r in rows if r.name == name and (r.threat_model, r.eps, r.samples) == _setting(
                    report, t)[:3] and run in [e.report for e in r.reports] and r.sampling.endswith(
                    'exact samples' if report.get('eval_tau') is None else str(report['eval_tau']))]


def test_papers_only_rows_have_no_worst_case_and_rank_below_every_evaluated_row():
    """The L=5 reports of the LWTA WRN-34-1 models ran PGD-20 alone: their rows are not evaluated adaptively, and
    every board lists them after each row with an adaptive worst case."""
    rows = leaderboard.rows()
    papers_only = [r for r in rows if r.reports and all(
        f.protocol != 'adaptive' for f in r.attacks)]
    assert any(r.samples == 5 and r.name.startswith('wrn34_1_lwta.') for r in papers_only)
    assert all(r.worst is None and r.status == 'not evaluated adaptively' for r in papers_only)
    for board in leaderboard.boards(rows).values():
        statuses = [leaderboard.STATUSES.index(r.status) for r in board]
        assert statuses == sorted(statuses)
        worst = [r.worst.value for r in board if r.worst]
        assert worst == sorted(worst, reverse=True)


def test_the_paper_s_claim_stands_beside_the_authors_checkpoint_only():
    rows = leaderboard.rows()
    claimed = {r.name for r in rows if r.claim}
    assert claimed == {'wrn34_1_lwta.authors_pgd'}
    claim = leaderboard.PAPER_CLAIMS['wrn34_1_lwta.authors_pgd']
    assert dict(claim.figures)['AutoAttack'] == '74.71' and claim.paper == 'WRN paper'
    # the figures MODEL_CARDS.md quotes from the paper's Tables 1-3 (WRN-34-1, stochastic LWTA)
    quoted = (ROOT / 'MODEL_CARDS.md').read_text()
    assert '| 1 | 74.04 | 87.0 | 49.24 | 81.87 |' in quoted and '| 1 | 74.71 | 79.67 | 76.15 |' in quoted
    assert [v for _, v in claim.figures] == ['87.0', '81.87', '74.71', '79.67', '76.15']


def test_the_model_facts_come_from_config_and_architecture():
    rows = {r.name: r.model for r in leaderboard.rows()}
    wrn = rows['wrn34_1_lwta.cifar10_adaptive_nfgsm']
    config = json.loads((hub.SHIPPED_WEIGHTS / wrn.name / hub.CONFIG_FILE).read_text())
    assert (wrn.epochs, wrn.hours, wrn.U) == (config['recipe']['train']['epochs'],
                                              config['provenance']['train_step_hours'], 2)
    assert wrn.adaptive_training and 'mean surrogate' in wrn.training and wrn.training.startswith('N-FGSM')
    assert rows['wrn34_1.cifar10_nfgsm'].U is None and not rows['wrn34_1.cifar10_nfgsm'].adaptive_training
    assert rows['wrn34_1.cifar10_nfgsm'].parameters == wrn.parameters > 0  # LWTA adds no parameters
    assert rows['wrn34_1_lwta.authors_pgd'].epochs == 100  # the checkpoint's own record
    fmnist = rows['aistats_softmax_mnist.lwta_u2_fmnist_pgd']
    assert fmnist.hours_estimated and fmnist.hours == pytest.approx(468 * 7.29 / 3600)


def test_model_cards_md_lists_the_same_rows():
    """MODEL_CARDS.md (tools/make_model_cards.py) renders the leaderboard's rows: as committed, it holds each
    row once, with its figures and its status (after new reports ship, rerun the tool)."""
    lines = (ROOT / 'MODEL_CARDS.md').read_text().splitlines()
    table = [line for line in lines if line.startswith('| ') and '| L=' in line or '| not evaluated |' in line]
    rows = leaderboard.rows()
    assert len(table) == len(rows)
    for row in rows:
        if not row.reports:
            assert any(line.startswith(f'| {row.name}') and '| not evaluated |' in line for line in table)
            continue
        (line,) = [line for line in table if line.startswith(f'| {row.name}') and f'| L={row.samples}, {row.sampling} |'
                   in line and f'| {leaderboard.budget(row.threat_model, row.eps)} |' in line]
        worst = (f'**{100 * row.worst.value:.1f}** [{100 * row.worst.interval[0]:.1f}, '
                 f'{100 * row.worst.interval[1]:.1f}]' if row.worst else row.status)
        assert f'| {worst}' in line
        assert f'| {100 * row.clean.value:.1f} [' in line
        assert all(f'{f.name} ({f.protocol}) {100 * f.value:.1f}' in line for f in row.attacks if not f.part_of)
        assert all(f'`{e.command}`' in line for e in row.reports)
        assert (row.claim is not None) == ("paper's claim" in line)


def test_a_model_without_a_report_is_not_evaluated(one_model, tmp_path):
    shutil.rmtree(one_model / 'eval')
    (row,) = leaderboard.model_rows(one_model.name)
    assert row.reports == () and row.clean is None and row.worst is None and row.status == 'not evaluated'
    leaderboard.write_site(tmp_path / 'site')
    text = (tmp_path / 'site' / 'index.html').read_text()
    tr = text.split(f'<tr data-model="{one_model.name}"')[1].split('</tr>')[0]
    assert 'not evaluated' in tr and 'data-report=' not in tr and 'report.md' not in tr  # no figure


def test_a_report_with_two_threat_models_gives_a_row_on_each_board(one_model, tmp_path):
    """A report keeps threat models apart (here an L-inf attack with parts and an L2 attack, made from a shipped
    report): a row each, each on its own board, an attack's parts in its row but not a column."""
    name = one_model.name
    (run, report), = [r for r in _reports(name) if r[0] == 'eval/suite_n1000']
    figure = lambda accuracy: {'accuracy': accuracy, 'interval': [accuracy / 2, (1 + accuracy) / 2],  # noqa: E731
                               'p_correct': accuracy, 'n': report['n']}
    linf = report['threat_models'][0]
    attack = dict(report['attacks'][linf['attacks'][0]], parts={'apgd-ce': figure(0.5), 'apgd-t': figure(0.4)})
    l2 = {'protocol': 'AISTATS paper', 'threat_model': 'L2', 'eps': None, 'settings': {'attack': 'cw_l2'},
          'median_l2': 1.5, 'found': 3, **figure(0.3)}
    report = {**report, 'samples': 3, 'attacks': {**report['attacks'], linf['attacks'][0]: attack, 'aistats_cw': l2},
              'threat_models': [linf, {'threat_model': 'L2', 'eps': None, 'attacks': ['aistats_cw'], **figure(0.25)}]}
    (one_model / 'eval' / 'two_threats').mkdir()
    (one_model / 'eval' / 'two_threats' / 'report.json').write_text(json.dumps(report))
    (one_model / 'eval' / 'two_threats' / 'robust_vs_eps.png').write_bytes(b'a plot')  # as plots.py names it
    found = {r.threat_model: r for r in leaderboard.model_rows(name) if r.samples == 3}
    assert set(found) == {'Linf', 'L2'}
    assert (found['L2'].eps, [f.name for f in found['L2'].attacks]) == (None, ['aistats_cw'])
    # an L2 row of the papers' CW alone: not evaluated adaptively, its papers' protocol 0.3, no worst case
    assert found['L2'].worst is None and found['L2'].papers.value == 0.3
    assert found['Linf'].worst.value == linf['accuracy']
    parts = [f for f in found['Linf'].attacks if f.part_of == linf['attacks'][0]]
    assert [(f.name, f.value) for f in parts] == [(f'{linf["attacks"][0]} apgd-ce', 0.5),
                                                  (f'{linf["attacks"][0]} apgd-t', 0.4)]
    leaderboard.write_site(tmp_path / 'site')
    text = (tmp_path / 'site' / 'index.html').read_text()
    l2_board = text.split('id="fashion-mnist-l2"')[1].split('</section>')[0]
    assert 'data-samples="3"' in l2_board and 'aistats_cw<small>AISTATS paper</small>' in l2_board
    assert 'data-key=\'["attacks", "aistats_cw"]\'' in l2_board
    assert not any('apgd-ce' in head.split('</thead>')[0] for head in text.split('<thead>')[1:])
    page = tmp_path / 'site' / 'models' / name / 'index.html'  # its plots beside its page
    assert '<img src="eval/two_threats/robust_vs_eps.png"' in page.read_text()
    assert (page.parent / 'eval' / 'two_threats' / 'robust_vs_eps.png').read_bytes() == b'a plot'


def test_a_report_of_the_previous_format_is_refused_with_its_path(one_model, capsys, tmp_path):
    old = (one_model / 'eval' / 'old')
    old.mkdir()
    (old / 'report.json').write_text((Path(__file__).parent / 'data' / 'report_format1.json').read_text())
    assert main(['leaderboard', '--output', str(tmp_path / 'site')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('lwta-zoo leaderboard: error: ') and str(old / 'report.json') in err and 'format 1' in err
    assert not (tmp_path / 'site').exists()


def test_the_command_fails_on_one_line(tmp_path, capsys):
    (tmp_path / 'taken').write_text('a file, not a folder')
    assert main(['leaderboard', '--output', str(tmp_path / 'taken')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('lwta-zoo leaderboard: error: ') and err.count('\n') == 1


def test_the_output_folder_is_guarded(one_model, tmp_path, capsys):
    """A folder with a user's files is refused (and left as it was) unless --overwrite; a folder the command wrote
    is rewritten, its stale pages removed and files added since kept; a model's eval/ folder is refused."""
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'index.html').write_text('my own page')
    assert main(['leaderboard', '--output', str(mine)]) == 2
    assert 'did not write it' in capsys.readouterr().err and (mine / 'index.html').read_text() == 'my own page'
    assert sorted(p.name for p in mine.iterdir()) == ['index.html']
    assert main(['leaderboard', '--output', str(mine), '--overwrite']) == 0
    assert 'lwta_zoo leaderboard' in (mine / 'index.html').read_text()

    site = tmp_path / 'site'
    assert main(['leaderboard', '--output', str(site)]) == 0
    marker = json.loads((site / leaderboard.MARKER).read_text())
    assert 'index.html' in marker['files'] and 'sort.js' in marker['files']
    (site / 'notes.txt').write_text('added by the user')
    stale = site / 'old-board.svg'
    stale.write_text('<svg/>')
    marker['files'].append(stale.name)  # as if a board of a previous write were gone
    (site / leaderboard.MARKER).write_text(json.dumps(marker))
    assert main(['leaderboard', '--output', str(site)]) == 0
    assert not stale.exists() and (site / 'notes.txt').read_text() == 'added by the user'
    assert (site / 'index.html').is_file()

    for inside in (one_model / 'eval', one_model / 'eval' / 'site'):
        assert main(['leaderboard', '--output', str(inside)]) == 2
        assert "eval/, which lwta-zoo push uploads" in capsys.readouterr().err
    assert not (one_model / 'eval' / 'site').exists()


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


def _table(driver, section):
    """The heads and rows of a board on the front page, as the browser shows them now."""
    heads = driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll('thead th')).map(th => th.innerText.split('\\n')[0])",
        section)
    rows = driver.execute_script("""return Array.from(arguments[0].querySelectorAll('tbody tr')).map(tr => ({
        model: tr.dataset.model, samples: tr.dataset.samples || null, sampling: tr.dataset.sampling || null,
        status: tr.dataset.status, cells: Array.from(tr.cells).map(td => ({
            value: td.dataset.value === undefined ? null : td.dataset.value, report: td.dataset.report || null,
            key: td.dataset.key ? JSON.parse(td.dataset.key) : null, text: td.innerText}))}))""", section)
    return [h.strip() for h in heads], rows


def _screenshot(driver, path: Path):
    shot = driver.execute_cdp_cmd('Page.captureScreenshot', {'format': 'png', 'captureBeyondViewport': True})
    path.write_bytes(base64.b64decode(shot['data']))


def test_the_site_in_chromium(site, browser, tmp_path):
    shots = Path(os.environ.get('LWTA_ZOO_SCREENSHOTS') or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    _requests(browser)  # drop anything logged before
    for kind, size in WIDTHS.items():
        _open(browser, site / 'index.html', *size)
        _screenshot(browser, shots / f'index-{kind}.png')
    _open(browser, site / 'index.html', *WIDTHS['laptop'])
    sections = browser.find_elements('css selector', 'section.board')
    assert len(sections) == len(leaderboard.boards(leaderboard.rows()))
    reports = {(name, run): report for name in hub.shipped_weights() for run, report in _reports(name)}
    shown = set()
    for section in sections:
        heads, rows = _table(browser, section)
        worst = heads.index('worst case')
        settings = [(r['model'], r['samples'], r['sampling']) for r in rows if r['samples']]
        assert len(settings) == len(set(settings))  # each published model once per L (and test-time sampling)
        shown |= {r['model'] for r in rows}
        for row in rows:
            # every figure is its report's
            for cell in row['cells']:
                if cell['report']:
                    figure = _at(reports[row['model'], cell['report']], cell['key'])
                    assert float(cell['value']) == figure['accuracy'], (row['model'], cell)
            # no worst case from a report without the adaptive preset's attacks
            cell = row['cells'][worst]
            if cell['value'] is not None:
                report = reports[row['model'], cell['report']]
                assert cell['key'][0] == 'threat_models' and _adaptive(report, _at(report, cell['key']))
                assert row['status'] == 'adaptive suite'
            else:
                assert row['status'] != 'adaptive suite' and row['status'] in cell['text']
        # sorting by worst case, either way: every adaptively evaluated row above every other
        button = section.find_elements('css selector', 'thead th')[worst].find_element('tag name', 'button')
        for order in ('ascending', 'descending'):
            button.click()
            rows = _table(browser, section)[1]
            evaluated = [r['cells'][worst]['value'] is not None for r in rows]
            assert evaluated == sorted(evaluated, reverse=True), order
            values = [float(r['cells'][worst]['value']) for r in rows if r['cells'][worst]['value']]
            assert values == sorted(values, reverse=order == 'descending')
        papers = heads.index("papers' protocol")  # another column: rows without a figure go last, either way
        section.find_elements('css selector', 'thead th')[papers].find_element('tag name', 'button').click()
        values = [r['cells'][papers]['value'] for r in _table(browser, section)[1]]
        present = [float(v) for v in values if v is not None]
        assert present == sorted(present, reverse=True) and set(values[len(present):]) <= {None}
    assert shown == set(hub.shipped_weights())  # a row per published model
    # each row links to its model page: the card, the snippets, every image there
    links = {a.get_attribute('href') for a in browser.find_elements('css selector', 'td.model a.model-name')}
    assert links == {(site / 'models' / name / 'index.html').as_uri() for name in hub.shipped_weights()}
    for name in hub.shipped_weights():
        for kind, size in WIDTHS.items():
            _open(browser, site / 'models' / name / 'index.html', *size)
            _screenshot(browser, shots / f'{name}-{kind}.png')
        text = browser.find_element('tag name', 'main').text
        assert f'Model card for {name}' in text and f"'{name}'" in text
    requests = _requests(browser)
    assert any(url.endswith('/style.css') for url in requests) and any(url.endswith('.svg') for url in requests)
    assert any(url.endswith('/sort.js') for url in requests)
    assert all(url.startswith('file://') for url in requests), [u for u in requests if not u.startswith('file://')]
