"""Build the documentation site into `_docs/` from the notebooks in `nbs/`: `nbdev_docs` (Quarto) where the
`quarto` binary exists, else the same pages offline without Quarto: nbdev's own notebook processing
(`proc_nbs`: directives, `show_doc` of every export; the reproduction notebooks are shown, never executed),
then nbconvert HTML with the sidebar of `nbs/sidebar.yml`. `pip install quarto-cli` downloads Quarto from
GitHub while it installs, so it does not install offline; this fallback needs nothing beyond the dev extra.

Usage: python nbs/_site.py [--no-quarto] [--strict] [--out DIR]  (DIR default: _docs; nbdev's processed notebooks go to DIR/../_proc)  (from the repository root; `make docs`)."""
from __future__ import annotations
import html, os, re, shutil, subprocess, sys, warnings
from pathlib import Path

import nbformat, yaml
from execnb.nbio import read_nb, write_nb
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.config import get_config
from nbdev.processors import FilterDefaults, exec_show_docs
from nbdev.quarto import refresh_quarto_yml


def sidebar_sections(nbs: Path) -> list[tuple[str | None, list[str]]]:
    "(section title or None, notebook paths relative to `nbs`) from sidebar.yml, globs expanded as Quarto does."
    out = []
    for entry in yaml.safe_load((nbs / 'sidebar.yml').read_text())['website']['sidebar']['contents']:
        title, pats = (None, [entry]) if isinstance(entry, str) else (entry['section'], entry['contents'])
        pats = [pats] if isinstance(pats, str) else pats
        out.append((title, [p.relative_to(nbs).as_posix() for pat in pats for p in sorted(nbs.glob(pat))]))
    return out


def html_name(page: str) -> str:
    "The page's file in the site: numeric prefix dropped as nbdev's doc links expect (`viz/71_explorers.ipynb` -> `viz/explorers.html`)."
    parent, _, name = page.rpartition('/')
    return (parent + '/' if parent else '') + re.sub(r'^\d+_', '', name[:-len('.ipynb')]) + '.html'


def front_matter(nb) -> dict:
    "The title/description nbdev's processing put in the notebook's first raw cell."
    if nb.cells and nb.cells[0].cell_type == 'raw':
        m = re.match(r'^---\n(.*?)\n---', nb.cells[0].source, re.S)
        if m: return yaml.safe_load(m.group(1)) or {}
    return {}


def nav(sections, page: str, titles: dict[str, str]) -> str:
    "The sidebar as HTML, links relative to `page`."
    up = '../' * page.count('/')
    items = []
    for title, pages in sections:
        links = ''.join(f'<li{" class=current" if p == page else ""}><a href="{up}{html_name(p)}">{html.escape(titles[p])}</a></li>'
                        for p in pages)
        items.append(f'<li><b>{html.escape(title)}</b><ul>{links}</ul></li>' if title else links)
    return f'<nav class="cxr-sidebar"><a href="{up}index.html"><b>{html.escape(get_config().title)}</b></a><ul>{"".join(items)}</ul></nav>'


STYLE = """<style>.cxr-sidebar{position:fixed;top:0;left:0;bottom:0;width:17rem;overflow-y:auto;padding:1rem;
background:#f7f7f9;border-right:1px solid #ddd;font:14px/1.4 system-ui,sans-serif}.cxr-sidebar ul{list-style:none;
padding-left:.8rem;margin:.2rem 0}.cxr-sidebar li.current>a{font-weight:bold}.cxr-sidebar a{text-decoration:none;
color:#2c6ca3}body{margin-left:18rem!important}div.description{font-style:italic;font-size:125%;opacity:70%}.jp-OutputArea-output{padding-left:.6rem}</style>"""


class _NoShowDocExec(FilterDefaults):
    "nbdev's processors less `exec_show_docs`: the page keeps its prose and code, without rendered API signatures."
    def base_procs(self): return [p for p in super().base_procs() if p is not exec_show_docs]


def process(nbs: Path, cache: Path, pages: list[str]) -> dict[str, str]:
    "nbdev's docs processing of each page into `cache`; returns {page: error} for pages whose show_doc cells could not run."
    degraded = {}
    os.environ['IN_TEST'] = '1'                        # as nbdev's own driver: notebooks may skip work under it
    try:
        for p in pages:
            nb = read_nb(nbs / p)
            try: FilterDefaults().nb_proc(nb).process()
            except Exception as e:                     # nbdev runs only import/export cells: one that needs an earlier cell fails
                degraded[p] = str(e).splitlines()[0] + ' ' + (str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else '')
                nb = read_nb(nbs / p); _NoShowDocExec().nb_proc(nb).process()
            (cache / p).parent.mkdir(parents=True, exist_ok=True); write_nb(nb, cache / p)
    finally: del os.environ['IN_TEST']
    return degraded


def build_offline(cfg, nbs: Path, out: Path) -> tuple[list[Path], dict[str, str]]:
    "Render every sidebar page to `out` as HTML; returns the pages written and {page: why its API docs are missing}."
    cache = out.parent / '_proc'
    shutil.rmtree(cache, ignore_errors=True)
    sections = sidebar_sections(nbs)
    pages = [p for _, ps in sections for p in ps]
    degraded = process(nbs, cache, pages)
    nbs_ = {p: nbformat.read(cache / p, as_version=4) for p in pages}
    titles = {p: front_matter(nb).get('title') or Path(p).stem for p, nb in nbs_.items()}
    exporter = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove-input'}), enabled=True)
    shutil.rmtree(out, ignore_errors=True)
    written = []
    for p, nb in nbs_.items():
        fm = front_matter(nb)
        if fm: nb.cells = nb.cells[1:]
        for c in nb.cells:                             # Quarto's `#| echo: false` and link attributes, for nbconvert
            if c.cell_type == 'code' and re.match(r'#\|\s*echo:\s*false', c.source): c.metadata.setdefault('tags', []).append('remove-input')
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md: o['data']['text/markdown'] = re.sub(r'\{target="_blank"[^}]*\}', '', md if isinstance(md, str) else ''.join(md))
        head = f'<div style="padding:0 1.5rem"><h1>{html.escape(titles[p])}</h1>' + (f'<div class="description">{html.escape(fm["description"])}</div>' if fm.get('description') else '') + '</div>'
        body, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': titles[p]}})
        up = '../' * p.count('/')
        body = body.replace(f'href="{cfg.doc_host}{cfg.doc_baseurl}/', f'href="{up}')   # nbdev's doc links: to this copy
        body = re.sub(r'href="(?!https?:|#|/)([^"#]+?\.ipynb)', lambda m: f'href="{html_name(m.group(1))}', body)  # as Quarto does
        body = body.replace('</head>', STYLE + '</head>', 1)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav(sections, p, titles) + head, body, count=1)
        dest = out / html_name(p); dest.parent.mkdir(parents=True, exist_ok=True); dest.write_text(body)
        written.append(dest)
    shutil.copy(nbs / 'styles.css', out / 'styles.css')
    return written, degraded


def main(argv: list[str]) -> None:
    cfg = get_config()
    nbs, out = cfg.nbs_path, Path(argv[argv.index('--out') + 1]) if '--out' in argv else cfg.config_path / cfg.doc_path.name
    warnings.filterwarnings('ignore', 'Found cells containing imports')   # the pages that fail are reported below
    if shutil.which('quarto') and '--no-quarto' not in argv:
        subprocess.run([sys.executable, '-c', 'from nbdev.quarto import nbdev_docs; nbdev_docs.__wrapped__()'], check=True)
    else:
        refresh_quarto_yml()
        written, degraded = build_offline(cfg, nbs, out)
        print(f"{len(written)} pages in {out} (offline build: no quarto binary)")
        for p, why in degraded.items(): print(f"WARNING {p}: API docs not rendered ({why}); put its imports in cells of their own (nbdev FAQ)")
        if degraded and '--strict' in argv: sys.exit(1)


if __name__ == '__main__': main(sys.argv[1:])
