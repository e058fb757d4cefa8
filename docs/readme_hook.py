"""MkDocs hook: the repository's README.md becomes the site's page guide.md.

The README links into the docs as ``docs/pages/<page>.md`` (right on GitHub); on
the site those pages sit beside guide.md, so that prefix is dropped.
"""

from pathlib import Path

from mkdocs.structure.files import File

README = Path(__file__).resolve().parent.parent / "README.md"
PAGE = "guide.md"


def on_files(files, config):
    files.append(File.generated(config, PAGE, abs_src_path=str(README)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == PAGE:
        return markdown.replace("](docs/pages/", "](")
    return markdown
