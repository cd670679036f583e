"""MkDocs hook: publish the repository's notebooks/*.ipynb as docs pages.

The notebooks live in `notebooks/` (the tests execute them), not under `docs/`;
this adds each one to the build as `notebooks/NAME.ipynb`, which mkdocs-jupyter
renders without executing it. Runs before the plugins' `on_files`
(priority 100), so mkdocs-jupyter sees the notebooks.
"""

import pathlib

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parent.parent


@event_priority(100)
def on_files(files, config):
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{path.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
