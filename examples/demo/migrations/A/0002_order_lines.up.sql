CREATE TABLE order_lines (order_id INTEGER NOT NULL REFERENCES orders (id), sku TEXT NOT NULL, quantity INTEGER NOT NULL);
