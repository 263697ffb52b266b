"""attnscope dashboard: page config, navigation. No logic here."""

import streamlit as st

import ui.preload  # noqa: F401  (every module the pages use, imported once before any page runs)

st.set_page_config(page_title="attnscope", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page("ui/attention.py", title="Attention", icon=":material/grid_view:", default=True),
    st.Page("ui/masking.py", title="Masking", icon=":material/grid_on:"),
    st.Page("ui/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("ui/heads.py", title="Heads", icon=":material/psychology:"),
    st.Page("ui/explain.py", title="Explain", icon=":material/lightbulb:"),
    st.Page("ui/routes.py", title="Routes", icon=":material/route:"),
    st.Page("ui/generate.py", title="Generate", icon=":material/edit_note:"),
    st.Page("ui/drift.py", title="Drift", icon=":material/mouse:"),
    st.Page("ui/padding.py", title="Padding", icon=":material/padding:"),
    st.Page("ui/backends.py", title="Backends", icon=":material/bolt:"),
    st.Page("ui/lab.py", title="Lab", icon=":material/science:"),
    # -- Anatomy (issue 25) --
    st.Page("ui/anatomy.py", title="Anatomy", icon=":material/biotech:"),
]

st.navigation(PAGES).run()
