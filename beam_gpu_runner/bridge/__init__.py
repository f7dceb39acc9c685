"""The bridge to Beam's runner internals (see BUILD_NOTES.md, "The bridge").

Everything that touches Beam's ``fn_api_runner``, its SDK harness internals or
a private Beam name lives in this package, and only here:

* ``beam``: the internals themselves, each listed with its canary;
* ``buffers``: buffer ids as values, and the encoded chunks stages exchange;
* ``context``: a job's coders, descriptors and side inputs (Beam's context);
* ``fnapi``: one attempt of one bundle over the Fn API, splits included;
* ``bundles``: engine bundles to attempts and attempts to engine events;
* ``grouped``: a batch GroupByKey's input grouped on the driver;
* ``runner_stages``: stages the runner runs itself (streaming GroupByKey,
  PairWithTiming); ``test_stream``: a TestStream's script;
* ``metrics``: monitoring infos of many bundles merged;
* ``workers``: the Fn API services and the runner's handle on a worker;
* ``harness``: Beam's SDK harness with ~1 MB output messages (in workers).

Importing the package imports nothing: ``harness`` runs first in every worker.
"""
