"""backends page (being built)."""

import streamlit as st

st.title("backends")
st.info("This page is being built.")
