CREATE TABLE customer_emails (customer_id INTEGER NOT NULL, email TEXT NOT NULL UNIQUE);
