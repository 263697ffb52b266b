"""heads page (being built)."""

import streamlit as st

st.title("heads")
st.info("This page is being built.")
