CREATE INDEX payments_by_invoice ON invoice_payments (invoice_id);
