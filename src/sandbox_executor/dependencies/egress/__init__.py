"""The dependency installer's only way out: a forward proxy the daemon runs per install.

``policy`` who may be reached (pure), ``heads`` HTTP heads (pure), ``links`` the hosts an
index page links to (pure), ``proxy`` the proxy itself, ``streams`` its byte moving,
``route`` how pip's sandbox reaches it, ``tcp_rules`` the seccomp rules for pip where it
has no network namespace. docs/DEPENDENCIES.md describes the whole; docs/SECURITY.md what
it stops.
"""
