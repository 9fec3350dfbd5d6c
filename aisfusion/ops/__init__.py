"""Operations surfaces: how people and tools see and steer a running service.

``http`` (metrics, health, readiness, status, the read API, admin endpoints) and ``control``
(the unix socket `aisfusion shell` talks to, ``shell`` and ``shell_render`` on the other side)
both run ``commands``' argument rules; ``surfaces`` starts and stops them together. They see
the service only through ``view.ServiceView``, never the pipeline's own classes.
"""
