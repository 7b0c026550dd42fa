"""Drop-in adapters for the caches of the two applications Roadie replaces:
``roadie.compat.nowplaying`` (whats-now-playing's datacache) and
``roadie.compat.genreupdater`` (the library tagger's CacheOrchestrator)."""
