"""The Streamlit dashboard (issue 6)."""
