"""Measurement: one probe module per budget, all behind :class:`~.base.Probe`.

=================  ===============================  ======================================
budget             probe                            what it measures
=================  ===============================  ======================================
max_loop_lag       :mod:`.lag`                      how long ready callbacks waited
no_blocking        :mod:`.blocking`                 blocking calls made on the loop thread
no_leaked_tasks    :mod:`.leaks`                    tasks/coroutines left behind
max_rss            :mod:`.rss`                      resident memory growth and peak
=================  ===============================  ======================================
"""
