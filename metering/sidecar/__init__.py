"""The metering sidecar (``python -m metering sidecar``), one per embed pod: accepts usage on
localhost, spools it durably and forwards it to central metering.

A RecordUsage call is validated (:mod:`intent_embed.usage_events`, the check central applies),
appended to the SQLite spool (:mod:`.spool`; concurrent calls share one commit, :mod:`.writer`)
and acknowledged only after that commit, so the embed service can answer its client as soon as
usage is durable, even while central metering is down. :mod:`.forwarder` moves spooled events
to central; :mod:`.servicer` answers the calls; :mod:`.app` wires and stops it all;
:mod:`.settings` and :mod:`.metrics` hold its settings and Prometheus metrics.
"""
