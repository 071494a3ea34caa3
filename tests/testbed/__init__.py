"""testbed: the one library behind the end-to-end tests, the demo, the soak and the bench.

Everything runs on 127.0.0.1 with free ports. One module per concern:

* ``paths``        where the repository, Envoy, r-nacos and the plugin artifact are
* ``waiting``      free ports, ``wait_until``
* ``processes``    ``Proc`` (one child process) and ``Owner``, which stops everything a run
                   started, once, in reverse order, and prints the logs when asked
* ``backends``     small HTTP backends that answer with their name and count hits
* ``rnacos``       r-nacos, the Nacos-compatible registry, and its OpenAPI
* ``faulty_nacos`` a misbehaving Nacos whose fault modes are a table
* ``higress``      ``plugin.yaml`` converted the way the Higress controller converts it
* ``envoy``        the Envoy configuration generator, the process, its admin client and
                   stats, and ``wait_every_worker_routes``
* ``prometheus``   Prometheus text parsing
* ``rejections``   the plugin's documented rejections
* ``traffic``      request streams against the gateway
* ``tables``       plain-text tables for the printed results
* ``stack``        r-nacos, backends and gateways held by one ``Owner``

Only the standard library and PyYAML are used.
"""
