"""Scoring many images at once, off the request path: `pneumo batch` (`batch`, resumable files),
Ray Data (`ray`), and metrics on a labelled folder (`evaluate`)."""
