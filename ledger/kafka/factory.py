"""The persistence module of Kafka mode, selected with `PERSISTENCE_MODULE`.

The library's SQLite factory (with the statement cache of `ledger.sqlite_factory`) holds the
writer's local replica; this factory adds the Kafka side: it creates or checks the topics,
wires the recorder to the ledger topic and brings the replica up to date with the topic
before the application reads anything.
"""

from __future__ import annotations

from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.sqlite import SQLiteConnection

from ledger.application import RECORD_KEY_ENV
from ledger.kafka.clients import secured
from ledger.kafka.recorder import KafkaLedgerRecorder, KafkaLink
from ledger.kafka.topics import ledger_layout
from ledger.settings import Settings, SettingsError
from ledger.sqlite_factory import LedgerSQLiteFactory, StatementCachingPool


class ReplicaConnectionPool(StatementCachingPool):
    """Connections to the replica that do not fsync on every commit (WAL, `synchronous=NORMAL`).

    The ledger topic is the log of record; the replica is a cache of it. A commit that a
    power cut takes away loses its rows and the partition positions they were read up to
    together (WAL stays consistent), and the next catch-up reads those records back from the
    topic, as it does when the process dies between the Kafka commit and the replica's. What
    the topic does not hold, the data keys, is in the key store, which keeps SQLite's full
    durability. The fsync sat between every intake batch's Kafka commit and the next batch.
    """

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        connection.cursor().execute("PRAGMA synchronous=NORMAL")  # autocommit: outside any BEGIN
        return connection


class KafkaFactory(LedgerSQLiteFactory):
    pool_class = ReplicaConnectionPool
    _recorder: KafkaLedgerRecorder | None = None

    def application_recorder(self) -> ApplicationRecorder:
        settings = Settings.from_env(
            {
                **{key: value for key, value in self.env.items() if isinstance(value, str)},
                "LEDGER_BACKEND": "kafka",
            }
        )
        layout = ledger_layout(settings)
        mac_key = self.env.get(RECORD_KEY_ENV)
        if not mac_key:
            raise SettingsError(
                f"{RECORD_KEY_ENV} is missing: the Kafka module is configured by "
                "ledger.application.persistence_env"
            )
        recorder = KafkaLedgerRecorder(
            datastore=self.datastore,
            link=KafkaLink(
                secured(settings),
                layout.topics,
                layout.partitions,
                bytes.fromhex(mac_key),
                record_limit=layout.record_limit,
                intake_record_limit=layout.intake_record_limit,
            ),
        )
        if self.env_create_table():
            recorder.create_table()
        recorder.catch_up()
        self._recorder = recorder
        return recorder

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()
        super().close()
