"""Sales' terms in the record, with SQLAlchemy Core over the unit of work's session."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ARRAY, Row, String, any_, bindparam, cast, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from allocation.adapters.orm import sale_skus, sales
from allocation.adapters.repository import aware
from allocation.adapters.sale_repository import AbstractSaleRepository
from allocation.adapters.sql_arrays import text_array
from allocation.domain.sale import Sale
from allocation.service_layer.unit_of_work import Conflict


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class SqlSaleRepository(AbstractSaleRepository):
    def __init__(self, session: Session) -> None:
        self.session = session

    def _sale(self, row: Row[tuple[str, str, datetime, float, int, int | None,
                                   datetime | None]]) -> Sale:
        namespace, name, opens_at, factor, ttl, most, closed_at = row
        skus = self.session.execute(
            select(sale_skus.c.sku).where(sale_skus.c.namespace == namespace,
                                          sale_skus.c.sale == name)
            .order_by(sale_skus.c.position)).scalars().all()
        return Sale(namespace, name, tuple(skus), int(aware(opens_at).timestamp() * 1000),
                    float(factor), int(ttl), most, closed_at is not None)

    def _columns(self) -> tuple[object, ...]:
        return (sales.c.namespace, sales.c.sale, sales.c.opens_at, sales.c.admit_factor,
                sales.c.pass_ttl_seconds, sales.c.max_admitted, sales.c.closed_at)

    def get(self, namespace: str, sale: str) -> Sale | None:
        row = self.session.execute(select(*self._columns()).where(  # type: ignore[call-overload]
            sales.c.namespace == namespace, sales.c.sale == sale)).first()
        return None if row is None else self._sale(row)

    def add(self, sale: Sale) -> None:
        try:
            with self.session.begin_nested():
                self.session.execute(insert(sales).values(
                    namespace=sale.namespace, sale=sale.sale,
                    opens_at=_moment(sale.opens_at_ms), admit_factor=sale.admit_factor,
                    pass_ttl_seconds=sale.pass_ttl_seconds, max_admitted=sale.max_admitted))
                self.session.execute(insert(sale_skus), [
                    {"namespace": sale.namespace, "sale": sale.sale, "sku": sku,
                     "position": position, "open": True}
                    for position, sku in enumerate(sale.skus)])
        except sa_exc.IntegrityError as exc:
            raise Conflict(str(exc.orig)) from exc

    def close(self, namespace: str, sale: str) -> None:
        self.session.execute(update(sales).where(
            sales.c.namespace == namespace, sales.c.sale == sale, sales.c.closed_at.is_(None))
            .values(closed_at=datetime.now(UTC)))
        self.session.execute(update(sale_skus).where(
            sale_skus.c.namespace == namespace, sale_skus.c.sale == sale).values(open=False))

    def gating(self, namespace: str, skus: Sequence[str]) -> dict[str, str]:
        # On PostgreSQL one array parameter, not one a sku: a rebuild asks of thousands.
        among = (sale_skus.c.sku == any_(cast(bindparam(None, text_array(skus), type_=String),
                                              ARRAY(String)))
                 if self.session.get_bind().dialect.name == "postgresql"
                 else sale_skus.c.sku.in_(list(skus)))
        rows = self.session.execute(
            select(sale_skus.c.sku, sale_skus.c.sale).where(
                sale_skus.c.namespace == namespace, among, sale_skus.c.open.is_(True)))
        return {sku: sale for sku, sale in rows}

    def open_sales(self) -> list[Sale]:
        """In two queries however many sales are open (every server reads them twice a
        second)."""
        rows = self.session.execute(select(*self._columns()).where(  # type: ignore[call-overload]
            sales.c.closed_at.is_(None))).all()
        skus: dict[tuple[str, str], list[str]] = {}
        for namespace, name, sku in self.session.execute(
                select(sale_skus.c.namespace, sale_skus.c.sale, sale_skus.c.sku)
                .where(sale_skus.c.open.is_(True))
                .order_by(sale_skus.c.namespace, sale_skus.c.sale, sale_skus.c.position)):
            skus.setdefault((namespace, name), []).append(sku)
        return [Sale(namespace, name, tuple(skus.get((namespace, name), ())),
                     int(aware(opens_at).timestamp() * 1000), float(factor), int(ttl), most)
                for namespace, name, opens_at, factor, ttl, most, _ in rows
                if skus.get((namespace, name))]
