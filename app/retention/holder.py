"""The retention domain's part of the personal-data inventory: the erasure queue and the
remembered last activity. Both name a person by id only; erasing the person removes them."""

from __future__ import annotations

from app.db import table_of
from app.inventory import TableHolder, register
from app.retention.models import ErasureQueue, ExpiredActivity

HOLDER = register(TableHolder("retention", (table_of(ErasureQueue), table_of(ExpiredActivity))))
