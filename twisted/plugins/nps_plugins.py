"""twistd dropins: C{twistd -n nps --config nps.conf} and C{twistd -n npc --config npc.conf}."""
from twisted.application.service import ServiceMaker

nps = ServiceMaker("NPS server", "nps.tap.server", "Reverse tunnel server (NPS compatible).", "nps")
npc = ServiceMaker("NPS client", "nps.tap.client", "Reverse tunnel client (NPS compatible).", "npc")
