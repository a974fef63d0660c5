"""Peer-to-peer tunnels: UDP rendezvous on the server, hole punching, QUIC between the npcs."""
