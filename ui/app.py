"""attnscope dashboard: page config, navigation. No logic here.

The entry script of `streamlit run` in the checkout (root `app.py` calls `main`) and of `attnscope serve`.
Page paths are absolute, so that they resolve wherever the package is installed.
"""

from pathlib import Path

import streamlit as st

import attnscope.ui.preload  # noqa: F401  (every module the pages use, imported once before any page runs)
from attnscope.ui.labels import raw_toggle

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Configure the page and run the navigation (Streamlit calls this on every rerun)."""
    st.set_page_config(page_title="attnscope", page_icon=":material/visibility:", layout="wide")
    navigation = st.navigation(pages())
    raw_toggle()  # below the page list, on every page
    navigation.run()


def pages() -> list:
    """The twelve pages, in the sidebar's order."""
    return [
        st.Page(HERE / "attention.py", title="Attention", icon=":material/grid_view:", default=True),
        st.Page(HERE / "masking.py", title="Masking", icon=":material/grid_on:"),
        st.Page(HERE / "compare.py", title="Compare", icon=":material/compare:"),
        st.Page(HERE / "heads.py", title="Heads", icon=":material/psychology:"),
        st.Page(HERE / "explain.py", title="Explain", icon=":material/lightbulb:"),
        st.Page(HERE / "routes.py", title="Routes", icon=":material/route:"),
        st.Page(HERE / "generate.py", title="Generate", icon=":material/edit_note:"),
        st.Page(HERE / "drift.py", title="Drift", icon=":material/mouse:"),
        st.Page(HERE / "padding.py", title="Padding", icon=":material/padding:"),
        st.Page(HERE / "backends.py", title="Backends", icon=":material/bolt:"),
        st.Page(HERE / "lab.py", title="Lab", icon=":material/science:"),
        # -- Anatomy (issue 25) --
        st.Page(HERE / "anatomy.py", title="Anatomy", icon=":material/biotech:"),
    ]


if __name__ == "__main__":
    main()
