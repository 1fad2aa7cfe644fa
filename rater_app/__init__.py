"""rater_app: blinded study creation, the SQLite study store and the Gradio rating app."""
