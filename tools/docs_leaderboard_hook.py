"""mkdocs hook (mkdocs.yml, ``hooks:``): the leaderboard site as the docs site's ``leaderboard/`` section.

``lwta-zoo leaderboard --output`` writes its pages into a temporary folder, and each file joins the docs'
files to be copied as it is (HTML, CSS, images, and the reports' report.md, which the leaderboard links as
files: mkdocs must not render them as pages), so ``mkdocs build`` puts them under ``SITE/leaderboard/`` and
``--strict`` checks the docs' links into them like any other link.
"""
from pathlib import Path
from tempfile import TemporaryDirectory

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

from lwta_zoo.cli import main

SECTION = 'leaderboard'
_built: list = []  # the temporary folder of the current build, removed once the site is written


class CopiedFile(File):
    """A file the site carries byte for byte, whatever its name ends with."""

    def is_documentation_page(self) -> bool:
        return False


def on_files(files: Files, config: MkDocsConfig) -> Files:
    folder = TemporaryDirectory(prefix='lwta_zoo_leaderboard_')
    _built.append(folder)
    root = Path(folder.name)
    if main(['leaderboard', '--output', str(root / SECTION)]) != 0:
        raise RuntimeError('lwta-zoo leaderboard failed (its error is above)')
    for path in sorted(p for p in (root / SECTION).rglob('*') if p.is_file()):
        files.append(CopiedFile(path.relative_to(root).as_posix(), str(root), config.site_dir,
                                config.use_directory_urls))
    return files


def on_post_build(config: MkDocsConfig) -> None:
    while _built:
        _built.pop().cleanup()
