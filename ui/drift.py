"""drift page (being built)."""

import streamlit as st

st.title("drift")
st.info("This page is being built.")
