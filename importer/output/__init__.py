"""What a job writes: results and failed-rows workbooks, the template."""
