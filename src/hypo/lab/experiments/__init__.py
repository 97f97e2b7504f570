"""The three coverage-lab experiments; each ``run(...)`` returns a JSON-able dict."""
