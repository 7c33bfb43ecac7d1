"""Rendezvous: workers find each other's public and private endpoints here before punching
holes through their NATs (``docs/rendezvous-protocol.md``, ``docs/communicator.md``).

Layers, each importing only those below it:

- ``wire``: endpoint, framing, messages, authentication, TCPunch records;
- ``client``: the native client (asyncio and blocking) and a TCPunch client;
- ``server``: the asyncio server speaking TCPunch byte for byte (for FMI's C++ clients) and
  the native, authenticated protocol with pairing by name and world registration;
- ``aws``: Route 53 self-registration and the secret's sources;
- ``cli`` / ``__main__``: the command line that composes them.

This package imports none of them, so importing the client never loads the server.
"""
