# -*- test-case-name: test.test_plugins -*-
"""The seams between the bridge and the proxy modes."""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IProxyMode(Interface):
    """A proxy mode (npc.conf C{mode=} value), registered as a twisted.plugin."""

    name = Attribute("the npc.conf mode= value, e.g. 'tcp'")

    def listen(reactor, tunnel, opener):  # type: ignore[no-untyped-def]
        """Server side: open the public side of C{tunnel} (an L{nps.model.Tunnel}).

        For each user connection call C{opener(link)} with a link header dict
        (at least C{{"target": "host:port"}}); it returns an
        C{IStreamClientEndpoint} whose C{connect(factory)} opens a mux stream
        to the owning client.

        @return: a Deferred firing with an C{IListeningPort} (or anything with
            C{stopListening()}).
        """

    def serve(reactor, link):  # type: ignore[no-untyped-def]
        """Client side: a stream arrived with link header C{link}.

        @return: a Deferred firing with the C{IProtocol} that will be attached
            to the stream (usually connected to C{link["target"]}), or failing
            with a reason that is sent back to the server as a reset.
        """
