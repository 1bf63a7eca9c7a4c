"""`ambsn-serve`: a checkpoint behind an HTTP API and a web page.

`app.create_app` builds the Starlette application; `batcher` queues and batches the work for
the compiled network; `upload` turns request bodies into images (or clear refusals); `metrics`
keeps the Prometheus counters; `loadgen` is the loopback load client of the tests and the bench.
"""
