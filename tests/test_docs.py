"""The docs: every page the code, recipes and README cite ships in docs/ and is in the site's nav; the site
builds with ``mkdocs build --strict`` (tools/build_docs.sh: every link and anchor resolves), the leaderboard
inside it; and its pages work in a real browser (headless Chromium) from the file system."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r'docs/([\w-]+\.md)')
LINK = re.compile(r'\]\(([^)#\s]+)(?:#[^)]*)?\)')  # a markdown link's target, without its anchor


def _nav_pages(nav):
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        yield from _nav_pages(value) if isinstance(value, list) else [value]


def _citing_files():
    yield from (ROOT / 'lwta_zoo').rglob('*.py')
    yield from (ROOT / 'recipes').glob('*.yaml')
    yield from (p for p in (ROOT / 'tools').iterdir() if p.is_file())
    yield from (ROOT / name for name in ('README.md', 'MODEL_CARDS.md', 'hubconf.py'))


def test_every_docs_page_cited_ships_and_is_in_the_nav():
    config = yaml.load((ROOT / 'mkdocs.yml').read_text(), Loader=yaml.BaseLoader)  # plain strings, no tags
    nav = set(_nav_pages(config['nav']))
    cited = {}
    for path in _citing_files():
        text = path.read_text(encoding='utf-8')
        assert 'DESIGN.md' not in text, f'{path.relative_to(ROOT)} cites DESIGN.md, which a clone does not have'
        for page in CITED.findall(text):
            cited.setdefault(page, []).append(path.relative_to(ROOT).as_posix())
    assert {'evaluating.md', 'paper_fidelity.md'} <= set(cited)  # the pages the code and recipes cite
    for page, where in sorted(cited.items()):
        assert (ROOT / 'docs' / page).is_file(), f'docs/{page} (cited by {where}) does not exist'
        assert page in nav, f'docs/{page} (cited by {where}) is not in mkdocs.yml nav'


def test_readme_links_resolve_in_the_checkout():
    targets = [t for t in LINK.findall((ROOT / 'README.md').read_text(encoding='utf-8')) if '://' not in t]
    assert 'docs/evaluating.md' in targets and 'LICENSE' in targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    """The docs site as tools/build_docs.sh builds it (strict: a warning fails the build)."""
    output = tmp_path_factory.mktemp('docs_site')
    run = subprocess.run(['bash', str(ROOT / 'tools/build_docs.sh'), str(output)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return output


def test_the_site_holds_every_page_and_the_leaderboard(site):
    config = yaml.load((ROOT / 'mkdocs.yml').read_text(), Loader=yaml.BaseLoader)
    for page in _nav_pages(config['nav']):
        assert (site / page).with_suffix('.html').is_file(), page
    assert (site / 'leaderboard/index.html').is_file()
    # the leaderboard's links to the reports' report.md are files copied as they are, not pages mkdocs rendered
    reports = list((site / 'leaderboard/models').glob('*/eval/*/report.md'))
    assert reports and not list((site / 'leaderboard/models').glob('*/eval/*/report.html'))


def _follow(driver, link_text):
    """Click the content's link with this text; return the page it leads to (its URL and first heading)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before = driver.current_url
    driver.find_element(By.CSS_SELECTOR, 'article').find_element(By.LINK_TEXT, link_text).click()
    WebDriverWait(driver, 30).until(lambda d: d.current_url != before and d.execute_script(
        "return document.readyState === 'complete'"))
    return driver.current_url, driver.find_element(By.TAG_NAME, 'h1').text


def test_the_site_in_chromium(site, browser):
    """A page opens with its heading and the theme's navigation; its links reach another page's anchor and the
    leaderboard built into the site."""
    from selenium.webdriver.common.by import By

    browser.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})
    browser.get((site / 'models.html').as_uri())
    assert browser.find_element(By.TAG_NAME, 'h1').text == 'Models and API'
    nav = browser.execute_script("return Array.from(document.querySelectorAll('nav a')).map(a => a.textContent)")
    assert any('Evaluating a stochastic model' in text for text in nav)
    url, heading = _follow(browser, 'paper fidelity')
    assert url == (site / 'paper_fidelity.html').as_uri() + '#the-two-kls' and heading == 'Paper fidelity'
    assert browser.find_element(By.ID, 'the-two-kls').text.startswith('The two KLs')

    browser.get((site / 'leaderboard.html').as_uri())
    url, heading = _follow(browser, 'Open the leaderboard')
    assert url == (site / 'leaderboard/index.html').as_uri()
    assert heading == 'Stochastic defenses, evaluated adaptively' and 'lwta_zoo leaderboard' in browser.title
