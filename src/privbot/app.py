"""The services one privbot process shares: settings, database, classifier, templates.

Built once at start-up and handed to ``intake()`` and the workers, so that no stage
reaches for globals and tests can build their own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from privbot.classify import Classifier
from privbot.config import Settings
from privbot.replies import Renderer
from privbot.store.db import Database


#: one trained model per intents folder per process (tests build many Services)
_LOADED: dict[str, Classifier] = {}
_LOADED_LOCK = threading.Lock()


@dataclass
class Services:
    settings: Settings
    db: Database
    renderer: Renderer
    #: delivery transports by channel ("email", "telegram"); built on first use
    transports: dict[str, Any] | None = None
    _classifier: Classifier | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def classifier(self) -> Classifier:
        # Loaded on first use: commands that never classify start faster.
        with self._lock:
            if self._classifier is None:
                key = str(self.settings.intents_dir.resolve())
                with _LOADED_LOCK:
                    if key not in _LOADED:
                        _LOADED[key] = Classifier.load(self.settings.intents_dir, self.settings.data_dir / "cache")
                    self._classifier = _LOADED[key]
            return self._classifier


def build_services(settings: Settings, *, migrate: bool = True, db: Database | None = None) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if db is None:
        db = Database(settings.db_url)
        if migrate:
            db.migrate()
    return Services(settings=settings, db=db, renderer=Renderer(settings.templates_dir))
