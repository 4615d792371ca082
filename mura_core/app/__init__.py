"""The Streamlit app layer: the only package that imports Streamlit (session state, cached services, views)."""
