// Runs one SQL statement through a JDBC driver (the one DBeaver uses) and prints one JSON-ish
// line per outcome: ROW<TAB>v1<TAB>v2... for each row, DONE <update count>, or
// ERROR <SQLSTATE> <message>. Run with the JDK's single-file launcher:
// java -cp /usr/share/java/postgresql.jar JdbcClient.java URL USER PASSWORD SQL
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.PreparedStatement;

public class JdbcClient {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], sql = args[3];
        try (Connection conn = DriverManager.getConnection(url, user, password);
             PreparedStatement statement = conn.prepareStatement(sql)) {
            if (statement.execute()) {
                try (ResultSet rows = statement.getResultSet()) {
                    int width = rows.getMetaData().getColumnCount();
                    while (rows.next()) {
                        StringBuilder line = new StringBuilder("ROW");
                        for (int i = 1; i <= width; i++) {
                            line.append('\t').append(rows.getString(i));
                        }
                        System.out.println(line);
                    }
                }
            } else {
                System.out.println("DONE " + statement.getUpdateCount());
            }
        } catch (SQLException e) {
            System.out.println("ERROR " + e.getSQLState() + " " + e.getMessage().replace('\n', ' '));
        }
    }
}
