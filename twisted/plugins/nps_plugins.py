"""twistd dropins: C{twistd -n nps --config nps.conf} and C{twistd -n npc --config npc.conf}."""
from twisted.application.service import ServiceMaker

from nps._quietcache import install as _quiet_plugin_cache

# twistd writes dropin.cache after importing this module; in a read-only
# install that fails loudly at every start, so silence just that message.
_quiet_plugin_cache()

nps = ServiceMaker("NPS server", "nps.tap.server", "Reverse tunnel server (NPS compatible).", "nps")
npc = ServiceMaker("NPS client", "nps.tap.client", "Reverse tunnel client (NPS compatible).", "npc")
