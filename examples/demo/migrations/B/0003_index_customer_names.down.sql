DROP INDEX customers_by_name;
