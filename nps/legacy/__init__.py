"""NPS 0.26 compatibility: old Go npc clients on our bridge port (L{nps.legacy.server}, C{legacy_bridge=true})
and our npc against an old Go nps (L{nps.legacy.client}, C{npc -proto=0.26}).

The wire formats are parsed without I/O in C{nps/protocols/legacy_*.py}; L{nps.legacy.mux} runs nps-mux
with streams that are Twisted transports, L{nps.legacy.crypt} does NPS's per-stream crypt and compress.
"""
