"""Feed side: sockets in, complete raw AIS messages out, counted per named source.

``manager.FeedSet`` starts and stops every configured feed: the TCP server (``tcp``), TCP
clients that connect out (``client``) and UDP listeners (``udp``). They share ``stream``
(per-source metrics, per-connection decoders, the idle timer); the framing itself is
``decoder`` (lines, tag blocks on their own line) over ``nmea`` (checksums, tag blocks,
sentence fields), ``fragments`` (reassembly) and ``payload`` (type and MMSI from the bits).
"""
