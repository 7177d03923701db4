"""The one safe MIME parse every content rule reads (see ``model.py`` for what it yields)."""
