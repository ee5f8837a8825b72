"""Put first on the ``PYTHONPATH`` of the Ray workers that sage_nb starts (see ``ensure_ray``).

Every Ray worker imports ``jsonschema``, which imports the optional ``rfc3987_syntax`` when
it is installed (Jupyter's format extras install it); that module builds an Earley parser
at import, about 2.5 s of CPU -- four times the rest of a worker's start-up, paid by every
actor. sage_nb's actors never validate IRIs, so in their workers this optional import fails
at once and ``jsonschema`` simply leaves the ``iri`` formats unchecked. The driver and every
other process keep the real module.
"""

raise ImportError("rfc3987_syntax is left out of the Ray workers started by sage_nb")
