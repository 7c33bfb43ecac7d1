"""The shared harness of the tests and the benchmarks (benchmarks never import from tests).

- ``data``: the test bucket's name and ``make_partition`` (small random partitions).
- ``onnx_models``: small ONNX models built in code, and their answers in numpy.
- ``net``: loopback, ``free_port``, ``assert_connection_ends``.
- ``rendezvous``: the rendezvous server with short deadlines (``FAST``, ``running_server``),
  ``ServerProcess`` (``python -m cosmicai.rendezvous serve`` as a child), ``async_test``,
  ``eventually`` and raw-socket helpers. The server in a thread of the test process is
  ``cosmicai.local.LocalRendezvous``, the one local runs use.
- ``worlds``: worlds of communicator ranks, as threads or forked processes
  (``run_threads``, ``run_forked``/``run_processes``, ``TcpWorld``), and link makers on
  loopback or over a store.
- ``aws``: the AWS application as the tests load it (handlers, events, the state machine
  definition); AWS itself is moto, in the fixtures of tests/aws.
- ``ecs_metadata``: the ECS container metadata endpoint on loopback (served to a task by the
  ECS agent, not an AWS API, so moto has none) and an ENI made in moto's EC2.
- ``netns``: NATs built from network namespaces (``topology``) and the one program run inside
  them by the NAT tests and the punch benchmark (``agents``); see netns/README.md.

Test modules import from here; ``conftest.py`` files hold fixtures (and pytest hooks) only.
"""
