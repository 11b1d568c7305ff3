"""Reading spreadsheets: format sniffing, text and workbook readers, the isolated child reader."""
