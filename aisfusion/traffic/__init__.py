"""Traffic tools: AIS for the demo, the tests and the benchmarks, not part of the service.

``simulator`` moves a fleet and encodes its reports (``nmea_out``), ``receivers`` hear it with
loss, delay, duplicates and clock skew, ``replay`` streams a simulation or a recording to a
feed port at a chosen rate, and ``demo`` runs the service on such traffic and summarises it.
"""
