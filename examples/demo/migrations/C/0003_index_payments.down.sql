DROP INDEX payments_by_invoice;
