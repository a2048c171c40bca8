"""The HTTP admin plane: a Flask app factory, its route groups (blueprints) and a Waitress server."""
