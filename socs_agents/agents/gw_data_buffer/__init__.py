"""GWDataBuffer: the gravitational-wave strain datastore as an OCS agent."""
