DROP TABLE customer_emails;
