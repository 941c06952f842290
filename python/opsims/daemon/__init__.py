"""opsimsd, the acquisition daemon: its publishing side (``publisher``) and the
service process built on it (docs/publishing.md)."""
