"""padding page (being built)."""

import streamlit as st

st.title("padding")
st.info("This page is being built.")
