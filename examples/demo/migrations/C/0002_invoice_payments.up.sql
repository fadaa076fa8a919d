CREATE TABLE invoice_payments (invoice_id INTEGER NOT NULL, paid_cents INTEGER NOT NULL);
