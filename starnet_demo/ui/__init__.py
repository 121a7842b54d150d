"""The Gradio app's plain functions: choices and labels, result files, and the handlers ``app.py`` wires to its
components. Model logic stays in the package; these only validate, call it and shape its results for Gradio."""
